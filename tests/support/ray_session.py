"""A local Ray session for tests that run curation in-process."""

from __future__ import annotations

import shutil
import tempfile

__all__ = ["ray_session"]


class ray_session:
    """Context manager: a local Ray session for in-process curation (reused if one is running)."""

    def __enter__(self) -> ray_session:
        import ray

        self.started = not ray.is_initialized()
        self.tmp = None
        if self.started:
            self.tmp = tempfile.mkdtemp(prefix="rayf", dir="/tmp")  # short: socket paths are length-limited
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=self.tmp)
        return self

    def __exit__(self, *exc) -> None:
        import ray

        if self.started:
            ray.shutdown()
            shutil.rmtree(self.tmp, ignore_errors=True)
