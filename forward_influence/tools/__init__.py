"""Tools beside the CLIs: the GPU check (:mod:`.checks`) and performance probes (:mod:`.perf`)."""
