"""Layer 5, the method's parts of one training step, each a small object the trainer holds and calls from TRL's
hooks, testable without a trainer: the step's zone cuts (``zone_cuts``), SG-OPD's teacher rollouts mixed in at
the cold start (``teacher_mix``), the step's verdict counts (``verdicts``) and the served teacher (``served``).
The schedules are :class:`sead.method.schedules.StepSchedules`, the curriculum
:class:`sead.method.curriculum.CompetenceCurriculum`, the loss's settings :class:`sead.losses.spec.LossSpec`.
Imports the layers below; not ``sead.data`` or ``sead.tasks`` (same layer).
"""
