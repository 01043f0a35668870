"""containerd over gRPC: generated v1 API stubs (api/, never hand-edited) and a small typed asyncio client.

One concern a module: client (connection, namespace, leases, one method per RPC), writer (the Content.Write
stream), runtime (containers and tasks), types (the plain data calls return) and errors (gRPC status mapping).
"""
