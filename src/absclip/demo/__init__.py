"""The synthetic demonstration task: generated scenes of coloured shapes, which the shipped ``absclip-demo`` knows."""
