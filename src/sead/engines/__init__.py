"""Layer 3, where text is generated: what to draw and running any sampler (``sampling``: where a rollout is
sampled), Hugging Face ``generate`` (``hf``), a local vLLM engine (``vllm_engine``), a vLLM server's client
(``vllm_server``), a teacher served by vLLM (``teacher_server``), TRL's vLLM engine for the student
(``student_vllm``), and a sampler from a model name for the commands (``backends``). Imports ``sead.utils``,
``sead.method`` and ``sead.losses``.
"""
