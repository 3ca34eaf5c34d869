"""Test sets drawn the way the page draws: MNIST digits reduced to strokes and redrawn with the
page's pen (``redraw``), and synthetic writers, each with a consistent style (``writers``)."""
