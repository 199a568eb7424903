from bdcore.cli import main

raise SystemExit(main())
