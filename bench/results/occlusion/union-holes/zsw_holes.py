import sys; sys.path.insert(0, "bench/results/occlusion/union-holes")
import holes_patch  # noqa
from zsw.cli.main import main
main()
