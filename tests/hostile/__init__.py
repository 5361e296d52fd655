"""The hostile-input suite: hundreds of malformed, oversized and malicious requests against a
gateway on the demo configuration, each answered with a 4xx OperationOutcome and writing nothing."""
