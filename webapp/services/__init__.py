"""Use cases. Each public function is one short transaction over the models."""
