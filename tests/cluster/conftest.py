from tests.cluster.servers import postgres, s3_server

__all__ = ["postgres", "s3_server"]
