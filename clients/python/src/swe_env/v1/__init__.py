"""The generated swe_env.v1 messages (`env_pb2`) and service stub (`env_pb2_grpc`), built from proto/ at install time."""
