"""Generated protobuf/gRPC code for proto/consortium/v1/fleet.proto (scripts/gen_proto.sh)."""
