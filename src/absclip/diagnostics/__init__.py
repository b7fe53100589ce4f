"""Seeing and measuring: explanations, HTML reports, the benchmark and its naive baseline, FLOP estimates."""
