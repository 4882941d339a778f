"""Layer 7, the quality experiment shared by ``sead demo`` and ``sead bench quality``: what is run (``settings``),
one seed's data (``seeds``), one variant's run (``runs``), the task's mechanisms (``mechanisms``), plots
(``plots``), worker processes (``workers``, ``worker``), and the demo itself (``demo``). Imports the layers below.
"""
