"""What the operator, the Kubernetes worker loop and the facade's Kubernetes backend share.

``contract``: resource names, labels, annotations and status field names the
three sides must agree on; ``client``: a small async wrapper over the
``kubernetes`` client; ``errors``: its errors, mapped onto the core's tree.
Living in the core keeps the worker image free of the operator and the
operator free of the worker.
"""
