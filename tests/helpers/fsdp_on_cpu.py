"""Run a script under FSDP on CPU:
`accelerate launch --config_file configs/fsdp.yaml tests/helpers/fsdp_on_cpu.py SCRIPT ARGS`.

accelerate (1.x) enables FSDP only on accelerators: on CPU it silently trains with plain DDP (distributed type
MULTI_CPU) although torch's FSDP2 (`fully_shard`) runs on CPU with gloo. This shim lets the tests run the FSDP2
path of accelerate and the Trainer on CPU: it turns a MULTI_CPU state that was given an FSDP plugin into an FSDP
state, then runs SCRIPT as `__main__`.
"""

import runpy
import sys

from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType

original_init = AcceleratorState.__init__


def init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    fsdp_plugin = fsdp_plugin or getattr(self, "fsdp_plugin", None)  # later calls find the shared state
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


AcceleratorState.__init__ = init_with_fsdp_on_cpu

if __name__ == "__main__":
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
