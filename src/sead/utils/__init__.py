"""Layer 0, imports nothing of sead: errors the CLI prints as one paragraph (``errors``), progress bars and
log lines (``progress``), the version (``version``), a flag agreed over every training process
(``distributed``), per-position tensors cut or padded to a batch's width (``tensors``).
"""
