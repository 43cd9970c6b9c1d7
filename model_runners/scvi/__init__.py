"""scVI: trained on the dataset itself (`fit`, offline) or mapped onto a CELLxGENE Census reference model."""
