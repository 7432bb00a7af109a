from gpo_services.control.app import main

if __name__ == "__main__":
    main()
