from prospect_core.cli import main

raise SystemExit(main())
