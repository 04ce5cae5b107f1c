"""Where measurement units run: in this process (:mod:`.local`) or on a Ray cluster (:mod:`.cluster`)."""
