"""`edgevl profile DIR`: latency, memory, FLOPs and accuracy of every artifact of an export, side by
side, against this machine's measured GEMM peak (schema of profile.json in docs/profile.md).

Modules: machine (CPU facts and the cached GEMM peak; probe_graphs: the probe's ONNX graphs),
flops (FLOPs counted from a graph), inputs (the feeds an artifact is timed on), timing (timed runs
under a budget), child (one artifact measured in its own process), measure (the parent side: which
artifacts run here, one child each), verdicts (artifacts slower than their fp32 sibling), run (the
command: manifest in, profile and reports out), tables (terminal table, report.md), svg and html
(report.html).
"""
