"""Generated gRPC/protobuf code for tightwad.v1 (scripts/gen_protos.py)."""
