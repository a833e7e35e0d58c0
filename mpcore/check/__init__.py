"""``mpbench check``'s engine: the API and verdict (``api``), the policy audit (``audit``) and the
float32 shadow pass with the loss-scale window (``shadow``)."""
