"""The scheduler: every rule of which sentence goes to which lane, and when. Never imports
Prefect (nor flows/ or tasks/): flows.lane_feed and flows.lane_farm execute what it decides.

    work_queue.py  the shared queue: which sentence a lane takes next (warm-model affinity,
                   only what the lane's server can render)
    plan.py        before queueing: which lanes can render each sentence, its affinity key
    pacing.py      how many sentences a lane claims at once; the start line of a batch
    health.py      one lane's state machine: keeps feeding, set aside, gives back, rejoins
    outcome.py     what a batch renders (Target) and reports (Outcome rows, their builders)
    lane_load.py   where an on-demand render goes: the lane with the least work ahead
"""
