"""Geneformer (Theodoris et al. 2023): rank-value tokenizer, BERT cell embeddings, in-silico perturbation."""
