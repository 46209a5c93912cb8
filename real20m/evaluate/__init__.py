"""Evaluation: feature extraction and files, Faiss search, Recall@K metrics and the HTML report.

Submodules are imported where used: the search path must not pull in torch.
"""
