"""Text embedding: the Embedder protocol, the sentence-transformers implementation and the text template."""
