"""Looking inside adapters and results: singular spectra, subspace similarity, plots."""
