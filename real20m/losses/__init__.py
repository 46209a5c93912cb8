"""Training objectives: InfoNCE with cross-rank negatives, cross-batch memory, the QCD loss."""
from real20m.losses.contrastive import gather_with_grad, info_nce
from real20m.losses.memory_bank import CrossBatchMemory
from real20m.losses.qcd_loss import QCDLoss

__all__ = ["CrossBatchMemory", "QCDLoss", "gather_with_grad", "info_nce"]
