"""Kubernetes awareness (layer 3, beside vigil.process): cgroup -> container -> pod.

Importing this package is cheap and never imports the `kubernetes` client: the pure parts
(pod records, label selectors; cgroup paths are vigil.process.cgroups) are used by the
pipeline and the tests alone; the API-server side (`vigil.k8s.watch`, `vigil.k8s.crd`) is
imported only with --enable-k8s-api.
"""
