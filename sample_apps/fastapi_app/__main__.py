"""``python -m sample_apps.fastapi_app``: the sample app on uvicorn (see README.md)."""
import sys

from sample_apps.fastapi_app.run import main

sys.exit(main())
