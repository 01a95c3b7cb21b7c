"""The metadata track: cleaning, engineered features, fold-fitted preprocessing and selection, LightGBM, and the
JSON export of the preprocessing."""
