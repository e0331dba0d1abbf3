"""Dataset review: broken files, duplicates and leakage, imbalance, suspected wrong labels.

``python scripts/review.py`` -> :func:`imgclf.review.reviewer.review`. The report is one HTML page;
``fix=quarantine`` moves chosen flags beside the dataset and ``undo=true`` puts them back.
"""
