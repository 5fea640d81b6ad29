from storyboard.cli import main

raise SystemExit(main())
