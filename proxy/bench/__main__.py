import sys

from proxy.bench.runner import main

sys.exit(main())
