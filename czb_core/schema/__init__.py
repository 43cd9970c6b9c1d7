"""What a dataset holds and whether a model can use it: genes, the data manager, validators."""
