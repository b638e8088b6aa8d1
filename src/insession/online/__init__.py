"""Learning from the event stream as it arrives, without retraining (see ``covisit``)."""
