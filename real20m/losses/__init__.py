"""Training objectives: InfoNCE with cross-rank negatives, cross-batch memory, the QCD loss and its terms."""
from real20m.losses.contrastive import gather_with_grad, info_nce
from real20m.losses.memory_bank import CrossBatchMemory
from real20m.losses.qcd_loss import QCDLoss
from real20m.losses.terms import TERMS, TermInputs, register_term
# The comparison terms register themselves after the QCD ones (the table's order is the sum's).
from real20m.losses import albef, cyclip, rank  # noqa: E402,F401
from real20m.losses import category, mqmc  # noqa: E402,F401  (after the others: their order stays as it was)

__all__ = ["CrossBatchMemory", "QCDLoss", "TERMS", "TermInputs", "gather_with_grad", "info_nce", "register_term"]
