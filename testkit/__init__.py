"""The project's own test tooling: never shipped (not in the wheel), importable in a clone
after ``pip install -e '.[dev]'`` (README command 2; testkit/build_backend.py says how).

tests/, tools/ and benchmarks/ import it by one name each, from anywhere:

- ``testcluster``: a real kube-apiserver + etcd (the API server tier); ``python -m testkit.testcluster up``
- ``nodecluster``: that, plus a real kubelet and containerd (the one-node tier); ``python -m testkit.nodecluster up``
- ``kubelet_standin``: runs the Deployments of an API server tier as local processes
- ``testhost``: a network namespace per run for backends (``pytest -p testkit.testhost``)
- ``child_run``: a child pytest run, its gateway command and its JUnit outcomes
- ``procs``: ``wait_until``, ``stop_process_group``, ``die_with_parent``, ``run_build``
"""
