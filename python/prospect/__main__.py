from prospect.cli import main

raise SystemExit(main())
