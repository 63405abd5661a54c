import sys

from sample_apps.django_app.run import main

sys.exit(main())
