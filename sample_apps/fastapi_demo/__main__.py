import sys

from sample_apps.fastapi_demo.run import main

sys.exit(main())
