"""Making a trained model smaller to ship: vocabulary trimming."""

from hfkd.deploy.vocabulary import TokenChange, TrimReport, VocabularyError, compare_tokenizers, trim_vocabulary

__all__ = ["TokenChange", "TrimReport", "VocabularyError", "compare_tokenizers", "trim_vocabulary"]
