"""The Open Inference Protocol (KServe v2) over REST, with Triton's binary-tensor, classification and
model-repository extensions, built on the same data plane as `/v1`."""
