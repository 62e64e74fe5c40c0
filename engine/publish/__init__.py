"""After training: merging the adapter, the model card, pushing to the Hub."""
