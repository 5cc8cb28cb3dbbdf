"""Reading studies back: the spread metrics (`metrics`), the statistics (`stats`), CKA (`cka`), the
tables and report of `analyze` and `compare` (`report`), the plots (`plots`) and the exports
(`export`). Nothing here imports the training engine."""
