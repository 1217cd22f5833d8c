"""Training side (torch): features, densities, calibration inputs. Never imports linewatch.export."""
