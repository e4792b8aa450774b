"""Where bytes come from and go to: torch.save files (zip and legacy), DCP folders, the
pre-scan and safe unpickling, the bounded walk, lazy tensors, atomic writes. Every read goes
through the same safety check. Imports only ``optstate.base``.
"""
