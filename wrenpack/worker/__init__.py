"""Code that runs inside the worker (a Lambda container or a local worker process).

Everything under this package imports only the standard library, cloudpickle
and, for the S3 store only, boto3. Nothing here may import the client, the
profiler, the runtime builder or the CLI.
"""
