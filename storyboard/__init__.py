"""Library for the image stage of the storyboard tool.

Everything that is not Prefect glue lives here: configuration, the sentence
store, the ComfyUI client and simulator, workflow injection and image
finishing. Nothing in this package imports prefect.
"""

__version__ = "0.1.0"
