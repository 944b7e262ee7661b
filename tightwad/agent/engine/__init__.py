"""The embedded llama.cpp engine and its gRPC Engine service."""
