"""Layer 6, the glue around TRL's ``DistillationTrainer``: the config (``config``, and what becomes of every
inherited TRL field: ``inherited``), every refusal before the first step (``startup``), the trainer (``trainer``)
and its loss and served-teacher glue (``loss_glue``, ``served_glue``), where the frozen models live
(``sharding``), graceful interruption (``interrupt``), and a YAML recipe made into a trainer (``recipe``).
Imports the layers below; not ``sead.evaluation`` or ``sead.plan`` (same layer).
"""
