"""Index structures a trained model holds and the candidate sources search: the approximate
nearest-neighbour index over item vectors (``ann``) and the training sessions as flat arrays
(``session_index``). Below both ``model`` and ``candidates``, so neither imports the other back."""
